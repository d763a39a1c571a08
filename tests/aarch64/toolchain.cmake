# Cross-compiling the C++ runtime for aarch64 with Debian's g++-aarch64-linux-gnu against an
# arm64 Debian root (check.sh passes it as -DCMAKE_SYSROOT): libpng, zlib, OpenSSL, GoogleTest
# and libstdc++ come from that root, ONNX Runtime from the aarch64 wheel copied into it.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
