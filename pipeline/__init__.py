"""edgepick: distil SeisBench phase pickers into tiny students for ESP32 microcontrollers."""

__version__ = "0.1.0"
