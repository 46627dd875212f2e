#!/usr/bin/env bash
# Makes the small video files of testdata/video/clips/ffmpeg (committed; ~50 KB in all) with the ffmpeg
# command-line tool: FFmpeg's testsrc2 pattern (it moves every frame) encoded four ways, chosen to exercise
# the `ffmpeg` feature's decoder:
#   mp4_h264_98x54_40f.mp4    H.264 with B-frames and a keyframe every 8 frames (seeking across GOPs,
#                             decode order != presentation order), 10 fps, 40 frames, moov at the end
#   webm_vp9_64x64_30f.webm   VP9 in WebM, 25 fps, 30 frames (fewer sampled than min_frames at 2 fps)
#   mov_mpeg4_120x68_90f.mov  MPEG-4 part 2 in MOV tagged BT.709 (the colour matrix), 30 fps, 90 frames
#   mkv_h264_72x40_25f.mkv    H.264 in Matroska at 12.5 fps with one keyframe (decode forward only)
# Re-running it with another FFmpeg gives other bytes; the tests compare our decoder with the CLI of the
# FFmpeg installed at test time, so they need no regenerated reference.
set -euo pipefail
out="${1:-$(dirname "$0")/../../testdata/video/clips/ffmpeg}"
mkdir -p "$out"
F=(ffmpeg -hide_banner -loglevel error -y)
"${F[@]}" -f lavfi -i "testsrc2=size=98x54:rate=10,format=yuv420p" -frames:v 40 -c:v libx264 -preset veryslow \
  -crf 32 -g 8 -keyint_min 8 -sc_threshold 0 -bf 2 -an "$out/mp4_h264_98x54_40f.mp4"
"${F[@]}" -f lavfi -i "testsrc2=size=64x64:rate=25,format=yuv420p" -frames:v 30 -c:v libvpx-vp9 -crf 45 -b:v 0 \
  -g 10 -an "$out/webm_vp9_64x64_30f.webm"
"${F[@]}" -f lavfi -i "testsrc2=size=120x68:rate=30,format=yuv420p" -frames:v 90 -c:v mpeg4 -q:v 20 -g 15 \
  -colorspace bt709 -color_primaries bt709 -color_trc bt709 -an "$out/mov_mpeg4_120x68_90f.mov"
"${F[@]}" -f lavfi -i "testsrc2=size=72x40:rate=25/2,format=yuv420p" -frames:v 25 -c:v libx264 -preset veryslow \
  -crf 34 -g 250 -bf 3 -an "$out/mkv_h264_72x40_25f.mkv"
ls -l "$out"
