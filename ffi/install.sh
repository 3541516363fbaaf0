#!/usr/bin/env bash
# ffi/install.sh: builds libsandbox (release) and installs the shared and static libraries (with
# their soname links), include/sandbox.h and sandbox.pc under $DESTDIR$PREFIX (PREFIX defaults to
# /usr/local). Then: cc prog.c $(pkg-config --cflags --libs sandbox)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PREFIX=${PREFIX:-/usr/local}
DEST=${DESTDIR:-}$PREFIX
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
cargo build --release -p rsandbox-ffi
TARGET=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release
install -d "$DEST/lib" "$DEST/include" "$DEST/lib/pkgconfig"
install -m 0755 "$TARGET/libsandbox.so" "$DEST/lib/libsandbox.so.$VERSION"
ln -sf "libsandbox.so.$VERSION" "$DEST/lib/libsandbox.so.0"
ln -sf libsandbox.so.0 "$DEST/lib/libsandbox.so"
install -m 0644 "$TARGET/libsandbox.a" "$DEST/lib/libsandbox.a"
install -m 0644 include/sandbox.h "$DEST/include/sandbox.h"
cat >"$DEST/lib/pkgconfig/sandbox.pc" <<PC
prefix=$PREFIX
libdir=\${prefix}/lib
includedir=\${prefix}/include

Name: sandbox
Description: rsandbox, rootless Linux sandboxes (C interface)
Version: $VERSION
Libs: -L\${libdir} -lsandbox
Libs.private: -lseccomp -lpthread -ldl
Cflags: -I\${includedir}
PC
echo "installed libsandbox $VERSION under $DEST"
