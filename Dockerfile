# The cluster image that k8s/rayservice.yaml names (IMAGE in serve_app/kuberay.py).
#   docker build -t promethios/native:0.1.0 . && docker push promethios/native:0.1.0
# No model inside: the RayService mounts it read-only at /models/lambda-7b. No secrets
# either: DATABASE_URL comes from the promethios-db Secret at run time.
#
# The Ray base image's version must equal RAY_VERSION in serve_app/kuberay.py (the
# RayService's rayVersion); tests/k8s/test_dockerfile.py checks both against the Ray
# the project is developed with.
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu
ARG RAY_VERSION

# The Ray images run as the non-root user `ray` (uid 1000, group `users`) with Python in
# /home/ray/anaconda3; keep that user and install into its environment.
USER ray
WORKDIR /home/ray/promethios

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users serve_app ./serve_app
COPY --chown=ray:users deployments ./deployments
COPY --chown=ray:users configs ./configs

# The project with its GPU extra (the CUDA build of vLLM). Editable, so that
# configs/policies/ and var/ resolve inside this checkout as they do in development.
# The constraint keeps pip from replacing the base image's Ray.
RUN echo "ray==${RAY_VERSION}" > /tmp/ray-constraint.txt \
    && pip install --no-cache-dir -c /tmp/ray-constraint.txt -e ".[gpu]" \
    && rm /tmp/ray-constraint.txt \
    && mkdir -p var

# MALLOC_ARENA_MAX: two glibc arenas per process; with the default (8 per core) a
# replica's freed memory fragments across arenas and its resident size creeps up
# (the soak: Ingress +1.1 MiB/min, flat with 2; README "Soak").
ENV PROMETHIOS_NATIVE_MODEL_PATH=/models/lambda-7b \
    TOKENIZERS_PARALLELISM=false \
    MALLOC_ARENA_MAX=2 \
    RAY_SERVE_USE_GRPC_BY_DEFAULT=1
