#!/usr/bin/env bash
# make_git_repo.sh DIR COMMITS: a small git repository in DIR (made afresh) with COMMITS
# commits of generated text files, fixed authors and dates: git's output on it is the
# same on every run and machine. Shared by the tests that run git on our allocator
# (//allocator:preload_smoke_test, //stress:chaos_test). Builds it with whatever
# malloc the caller's environment gives git: call it without LD_PRELOAD.
set -euo pipefail
repo=$1 commits=$2
rm -rf "$repo"
export GIT_AUTHOR_NAME=t GIT_AUTHOR_EMAIL=t@example.com GIT_COMMITTER_NAME=t
export GIT_COMMITTER_EMAIL=t@example.com GIT_CONFIG_NOSYSTEM=1 HOME="$(dirname "$repo")"
git init -q "$repo"
for i in $(seq "$commits"); do
  # 3000 lines of a fixed linear congruential sequence per file, three files in turn.
  awk -v s="$i" 'BEGIN { x = s; for (k = 0; k < 3000; k++) { x = (x * 1103515245 + 12345) % 2147483648; print k, x % 1000000 } }' \
    > "$repo/file$((i % 3)).txt"
  git -C "$repo" add -A
  day=$(printf '%02d' "$i")
  GIT_AUTHOR_DATE="2026-01-$day 12:00:00 +0000" GIT_COMMITTER_DATE="2026-01-$day 12:00:00 +0000" \
    git -C "$repo" commit -q -m "commit $i"
done
