# One image for the whole cluster (docker-compose.yml): the API (default command), the Ray head and
# worker nodes, and the TVM RPC tracker.
#
#   docker build -t hwnas:local .
#   docker run -p 8000:8000 hwnas:local        # the API alone: SQLite under /data, a local Ray
FROM python:3.11-slim

# gcc/g++ and libc headers: TVM's export_library links the compiled kernels into a shared library.
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
# Dependencies first, in a layer of their own: rebuilt only when pyproject.toml or the constraints change.
# The PyTorch CPU index: constraints.txt pins torch==2.13.0, the CPU build (PyPI's Linux wheel pulls
# multi-GB CUDA libraries).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --extra-index-url https://download.pytorch.org/whl/cpu -c constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
# Then the package itself.
COPY . .
RUN pip install -c constraints.txt --no-deps . \
    && rm -rf /src/build /src/*.egg-info

# A user of its own; the data directory (checkpoints, predictors, exports, SQLite) is a volume it owns.
RUN useradd --create-home --uid 1000 hwnas \
    && mkdir -p /data \
    && chown hwnas:hwnas /data
ENV HWNAS_HOME=/data
VOLUME ["/data"]
USER hwnas
WORKDIR /home/hwnas

# 8000: the API; 9190: the TVM RPC tracker; 6380: the Ray head's GCS.
EXPOSE 8000 9190 6380
CMD ["hwnas", "serve", "--host", "0.0.0.0", "--port", "8000"]
