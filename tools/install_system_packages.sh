#!/usr/bin/env bash
# Debian packages that headless napari needs (a virtual X server, OpenGL, Qt's xcb plugin deps),
# the headless browser that drives the reader-study page in its test (chromium + its driver), and
# the PostgreSQL server the multi-worker sweep tests start in a temporary folder (tests/sweep).
# Installs only what is missing, so a second run takes a moment.
set -euo pipefail
packages=(xvfb xauth libgl1 libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon-x11-0
          libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
          libxcb-xinerama0 libxcb-xkb1 libxcb-shape0 libxcb-cursor0 libxrender1 libxi6
          chromium chromium-driver postgresql)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "installing system packages: ${missing[*]}"
sudo_cmd=""
[ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get update -qq
$sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
