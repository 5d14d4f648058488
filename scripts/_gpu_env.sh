# Sourced by the GPU scripts: NCCL's settings, the repo on PYTHONPATH and $PY.
# NVLink multicast can put a host's GPUs out of service; nothing here needs it.
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY="${PT2CC_PYTHON:-python3}"

# The wheels carried in .whl/ (scripts/gpu-wheels: s3fs, moto[server], zstandard, py-spy),
# installed when $PY lacks them: the GPU machines have no network.
install_carried_wheels() {
  if [ -d .whl ] && ! "$PY" -c "import s3fs, moto, zstandard" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps .whl/*.whl
  fi
}
