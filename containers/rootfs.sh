#!/usr/bin/env bash
# A container's root file system from this machine's own files: each program given, the shared
# libraries it links (as ldd lists them) and /bin/sh, at their own paths under OUT. Nothing is
# pulled from outside: the tests' and the demo's images are `FROM scratch` over this tree.
# Usage: rootfs.sh OUT PROGRAM... (a directory, e.g. /usr/lib/python3.11, is copied whole).
set -euo pipefail
out=$1
shift
mkdir -p "$out"
# The usr-merged layout the programs expect, made first so that a program copied by either path lands once (/bin, /lib, /lib64 lead into /usr).
for d in bin sbin lib lib64; do
  if [ -L "/$d" ] && [ ! -e "$out/$d" ]; then mkdir -p "$out/$(readlink "/$d")" && ln -s "$(readlink "/$d")" "$out/$d"; fi
done
copy() { # a path, with the directories and symbolic links that lead to it
  local p=$1
  [ -e "$out$p" ] && return 0
  mkdir -p "$out$(dirname "$p")"
  cp -a "$p" "$out$p"
  if [ -L "$p" ]; then
    local target
    target=$(readlink -f "$p")
    copy "$target"
  fi
}
for p in /bin/sh "$@"; do
  p=$(command -v "$p" || echo "$p")
  copy "$p"
  [ -d "$p" ] && continue
  for lib in $(ldd "$p" 2>/dev/null | grep -oE '/[^ ]+' || true); do
    copy "$lib"
  done
done
mkdir -p "$out/tmp" "$out/proc" "$out/sys" "$out/dev" "$out/etc"
chmod 1777 "$out/tmp"
