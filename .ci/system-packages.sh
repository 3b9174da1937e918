#!/usr/bin/env bash
# System packages some tests need (Debian): none yet beyond Python.
true
