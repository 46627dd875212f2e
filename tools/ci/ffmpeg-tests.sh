#!/usr/bin/env bash
# The `ffmpeg` feature's tests: installs the Debian packages it builds against (FFmpeg's development
# libraries, libclang for bindgen, pkg-config) and the ffmpeg command-line tool the tests compare with, only
# those missing, then runs the tests of the crates that have ffmpeg tests. Idempotent; exits non-zero on
# failure.
set -euo pipefail
cd "$(dirname "$0")/../.."

pkgs=(libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libclang-dev pkg-config ffmpeg)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "ffmpeg-tests: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# processor: the decoder against the CLI, seeking, limits and bad files; cli: --video in generate and chat;
# server: an MP4 `video_url` part.
cargo test --release --features ffmpeg -p qwen3vl-processor --test video_ffmpeg --test video_errors
cargo test --release --features ffmpeg -p qwen3vl --test video
cargo test --release --features ffmpeg -p qwen3vl-server --test video
