#!/usr/bin/env bash
# CI: milkit as a user installs it. Build a wheel, install it into a second, fresh venv and run the console
# scripts from an empty folder, so the configs must come from inside the installed package.
# The second venv borrows the first one's third-party packages through a .pth file and installs only the wheel
# (--no-deps): a full dependency install downloads ~6 GB (CUDA torch) and took 251 s on the CI machine.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PY:-$ROOT/.venv/bin/python}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1
unset PYTHONPATH

mkdir "$WORK/src"                                    # build from a copy: no build/ or egg-info in the checkout
cp -r pyproject.toml README.md milkit data "$WORK/src/"   # data/: milkit/cohorts links there
"$PY" -m pip wheel --disable-pip-version-check --no-deps --no-build-isolation -q "$WORK/src" -w "$WORK/dist"

python3 -m venv "$WORK/venv"
V=$WORK/venv/bin
"$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" \
  > "$("$V/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/deps_from_ci_venv.pth"
"$V/python" -m pip install --disable-pip-version-check -q --no-deps "$WORK"/dist/milkit-*.whl

mkdir "$WORK/empty" && cd "$WORK/empty"
installed=$("$V/python" -c "import milkit; print(milkit.__file__)")
case "$installed" in "$WORK/venv/"*) ;; *) echo "milkit imported from $installed, not the wheel"; exit 1;; esac

# the cohort tables are inside the wheel
"$V/python" -c "from milkit.data.matching import resolve_cohort_csv as r; p = r('camelyon16'); assert p.is_file() and '$WORK/venv/' in str(p.resolve()), p"

# one fold, one epoch, from an empty folder
"$V/milkit-train" data=synthetic data.source.n_bags=24 data.source.max_size=16 model.embed_dims=[16] \
  model.attn_dim=8 trainer.max_epochs=1 trainer.min_epochs=1 cv.folds=3 cv.run_folds=[0] hydra.run.dir=run
test -f run/results.json && test -f run/fold0/checkpoints/best.ckpt
"$V/milkit-eval" ckpt_path=run/fold0/checkpoints/best.ckpt splits_csv=run/splits.csv hydra.run.dir=eval
test -f eval/metrics.json

# a user's own config folder is found through hydra.searchpath
mkdir -p "$WORK/user_conf/model"
printf 'defaults:\n  - abmil\n  - _self_\nembed_dims: [24]\n' > "$WORK/user_conf/model/my_abmil.yaml"
"$V/milkit-train" "hydra.searchpath=[file://$WORK/user_conf]" model=my_abmil --cfg job -p model \
  | tr -d ' ' | grep -qx -- "-24"

# every other console script composes its packaged config
for cmd in milkit-preprocess milkit-infer milkit-aut milkit-continual; do
  "$V/$cmd" --help > /dev/null
done
"$V/milkit-preprocess" input=x output=out --cfg job > /dev/null
echo "wheel check: ok ($(basename "$WORK"/dist/milkit-*.whl))"
