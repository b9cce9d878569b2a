# bertkit for NVIDIA GPUs: the image the manifests in deploy/kubernetes name (bertkit:latest).
#
#   docker build -t bertkit:latest .                     # from the repository root
#   docker run --gpus all --rm -v /data:/software/data/tf/data:ro -v /out:/root/tmp bertkit:latest \
#       bertkit pretrain --input_files_dir /software/data/tf/data/... --output_dir /root/tmp/run1 ...
#
# The base is PyTorch's own CUDA runtime image, so torch comes with its CUDA libraries and pip keeps
# it (bertkit needs torch>=2.4). Not built on the development machine, which has no Docker; see
# deploy/kubernetes/README.md for the build and push lines.
ARG BASE=pytorch/pytorch:2.9.0-cuda12.8-cudnn9-runtime
FROM ${BASE}

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# The package and its extras (corpus preparation, plots, TensorBoard, and the test extra's
# transformers for the export check), from this checkout.
COPY pyproject.toml README.md /src/bertkit/
COPY src /src/bertkit/src
RUN pip install "/src/bertkit[corpus,plot,tensorboard,test]" && rm -rf /src/bertkit

# A non-root user. The seed's layout puts outputs and logs under /root (/root/tmp, /root/hlogs),
# which the manifests keep; those two folders belong to the user and /root may be traversed.
RUN useradd --create-home --uid 1000 --user-group bert \
    && mkdir -p /software/data/tf/data /root/tmp /root/hlogs \
    && chown bert:bert /root/tmp /root/hlogs && chmod 755 /root
VOLUME ["/software/data/tf/data", "/root/tmp", "/root/hlogs"]
USER bert
WORKDIR /home/bert
CMD ["bertkit", "--help"]
