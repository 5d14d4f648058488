# Sourced by scripts: ensures .venv holds torch and the project, then activates it.
# PT2CC_PYTHON names an interpreter that already has them (the GPU machines), skipping this.
if [ -n "${PT2CC_PYTHON:-}" ]; then
  PYBIN="$(dirname "$PT2CC_PYTHON")"; export PATH="$PYBIN:$PATH"
else
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q torch==2.13.0
  fi
  if ! .venv/bin/python -c "import coordinator, storage, moto, s3fs, pytest_timeout, zstandard" 2>/dev/null; then
    .venv/bin/pip install -q -e ".[test]"
  fi
  export PATH="$PWD/.venv/bin:$PATH"
fi
