#!/bin/bash
# Builds Pythia 8.318's core library from the pythia8mc source distribution on PyPI (no Python bindings: about
# 6 minutes on this project's 2-core machine), links gen.cc against it and writes 1e5 events on a proton and
# 1e5 on a neutron into $OUT (default /tmp/line_photoproduction). Needs g++ and zlib headers.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-/tmp/line_photoproduction}
N=${N:-100000}
mkdir -p "$OUT/obj"
cd "$OUT"
[ -f pythia8mc-8.318.0.tar.gz ] || python3 -m pip download --no-deps --no-binary :all: -d . pythia8mc==8.318.0
[ -d pythia8mc-8.318.0 ] || tar -xzf pythia8mc-8.318.0.tar.gz
SRC="$OUT/pythia8mc-8.318.0/pythia8318"
ls "$SRC"/src/*.cc | xargs -P "$(nproc)" -I{} sh -c \
  'o="$0/obj/$(basename {} .cc).o"; [ -f "$o" ] || g++ -O2 -std=c++11 -DNOPLUGIN -DXMLDIR="\"$1/share/Pythia8/xmldoc\"" -I"$1/plugins/python/include" -c {} -o "$o"' \
  "$OUT" "$SRC"
g++ -O2 -std=c++11 -I"$SRC/plugins/python/include" "$HERE/gen.cc" obj/*.o -o gen -lz -ldl
./gen "$N" 11 2212 "$SRC/share/Pythia8/xmldoc" > events_p.txt 2> gen_p.log &
./gen "$N" 12 2112 "$SRC/share/Pythia8/xmldoc" > events_n.txt 2> gen_n.log
wait
grep -h sigmaGen events_p.txt events_n.txt
