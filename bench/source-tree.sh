# Sourced by the bench scripts: `source_tree DIR` leaves in DIR a tarball (src.tar) and its
# unpacked copy (tree/) of a real source tree, the first crates of the cargo registry (by
# name) that make 10,000 files; kept when already there.
source_tree() {
  local dir=$1 reg
  [ -f "$dir/src.tar" ] && return 0
  reg=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/ | head -1)
  python3 - "$reg" > "$dir/crates" <<'PY'
import os, sys
reg, total = sys.argv[1], 0
for c in sorted(os.listdir(reg)):
    if total >= 10000:
        break
    total += sum(len(files) for _, _, files in os.walk(os.path.join(reg, c)))
    print(c)
PY
  tar cf "$dir/src.tar" -C "$reg" -T "$dir/crates"
  mkdir -p "$dir/tree" && tar xf "$dir/src.tar" -C "$dir/tree"
}
