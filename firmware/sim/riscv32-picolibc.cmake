# CMake toolchain: bare-metal RV32IMC (the ESP32-C3 / C6 instruction set) with Debian's gcc-riscv64-unknown-elf,
# picolibc (semihosting I/O) and the C++ headers of libstdc++-arm-none-eabi-dev (the RISC-V toolchain ships none;
# they are target-independent apart from the bits/ directory, and we use no library part of libstdc++).
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR riscv32)
set(CMAKE_C_COMPILER riscv64-unknown-elf-gcc)
set(CMAKE_CXX_COMPILER riscv64-unknown-elf-gcc)  # linked with gcc: there is no libstdc++ to link
set(CMAKE_ASM_COMPILER riscv64-unknown-elf-gcc)
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)

# -march=rv32imc selects the rv32im/ilp32 multilib; rv32imc_zicsr would silently fall back to the rv64 default,
# so CSRs are read with `.option arch,+zicsr` in inline assembly (firmware/sim/port/sim_port.cc).
set(EDGEPICK_SIM_ARCH "-march=rv32imc -mabi=ilp32 -specs=picolibc.specs")
set(EDGEPICK_LIBSTDCXX_HEADERS /usr/include/newlib/c++/12.2.1 CACHE PATH "C++ headers (libstdc++-arm-none-eabi-dev)")
set(CMAKE_C_FLAGS_INIT "${EDGEPICK_SIM_ARCH} -ffunction-sections -fdata-sections")
set(CMAKE_CXX_FLAGS_INIT "${EDGEPICK_SIM_ARCH} -ffunction-sections -fdata-sections -fno-exceptions -fno-rtti \
-fno-threadsafe-statics -isystem ${EDGEPICK_LIBSTDCXX_HEADERS} -isystem ${EDGEPICK_LIBSTDCXX_HEADERS}/arm-none-eabi")
# (CMake links with the compile flags too: -specs must not come twice)
set(CMAKE_EXE_LINKER_FLAGS_INIT "--oslib=semihost --crt0=semihost -Wl,--gc-sections")
