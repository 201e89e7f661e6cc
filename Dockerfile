# lass: the transcription service with its default bundle.
#   docker build -t lass .            (CPU or CUDA: PyPI's torch wheels run on both)
#   docker run -p 8000:8000 lass      -> http://localhost:8000/health/ready
# Two stages: kenlm builds from source (cmake + C++), so compilers stay in the builder
# and the runtime image gets only the finished virtual environment.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake zlib1g-dev libbz2-dev liblzma-dev \
    && rm -rf /var/lib/apt/lists/*
# kenlm still declares cmake_minimum_required < 3.5, which a recent cmake refuses without this.
ENV CMAKE_POLICY_VERSION_MINIMUM=3.5 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (pinned in pyproject.toml: torch/torchaudio as a pair, numpy<2 for
# pyctcdecode; every version as tested in constraints.txt), so code edits do not reinstall torch.
COPY pyproject.toml README.md constraints.txt ./
COPY lass/__init__.py lass/__init__.py
RUN mkdir -p model service bench && touch model/__init__.py service/__init__.py bench/__init__.py \
    && pip install -c constraints.txt . && pip uninstall -y lass-asr
COPY lass/ lass/
COPY model/ model/
COPY service/ service/
COPY bench/ bench/
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE} AS runtime
# espeak-ng: `lass train corpus` can synthesize speech on this image too (RUN_APT in the Makefile).
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 lass \
    && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/lass lass
COPY --from=builder /opt/venv /opt/venv
# The default bundle (written by `lass train export`); mount another and set LASS_BUNDLE to serve it.
COPY model/default_bundle/ /opt/lass/bundle/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    OMP_WAIT_POLICY=PASSIVE \
    LASS_BUNDLE=/opt/lass/bundle \
    LASS_HOST=0.0.0.0 \
    LASS_PORT=8000
USER 10001:10001
WORKDIR /home/lass
EXPOSE 8000
# Ready only once the bundle is loaded and a warm-up batch ran; loading takes a while.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status == 200 else 1)"]
# uvicorn finishes in-flight requests on SIGTERM (graceful timeout 30 s).
STOPSIGNAL SIGTERM
CMD ["lass", "serve", "--host", "0.0.0.0", "--port", "8000"]
