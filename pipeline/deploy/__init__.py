"""Deployment: conversion to TFLite, TFLite Micro, the boards, the emulator, the serial protocol and pick formats."""
