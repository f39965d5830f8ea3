# One image for every Python service of tapline: the proxy, the two sinks, the sample apps and
# the schema migrations. docker-compose.yml gives each service its own command; this image
# only installs the package.

# --- builder: the pinned dependencies and tapline itself, in a venv that is copied whole ----
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The pinned requirements first: this layer stays cached while only the code changes. Only
# what the services run: the tests' tools are in requirements-test.txt, which is not copied.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The packages of pyproject.toml's [tool.setuptools.packages.find] include list, and what
# setuptools reads to build them. tests/compose checks that this list keeps up.
COPY pyproject.toml README.md ./
COPY apps/ apps/
COPY capture/ capture/
COPY db/ db/
COPY proxy/ proxy/
COPY sinks/ sinks/
COPY stack/ stack/
COPY tapline/ tapline/
# Not editable: the venv holds the code, so the runtime stage needs no source tree. The
# check runs from / so that it imports the installed package, not the tree in /src, and it
# imports what each service runs, so a dependency missing from requirements.txt fails here.
RUN pip install --no-deps . \
    && cd / && python -c "import apps.app_a, apps.app_b, capture, db.__main__, proxy.__main__, \
sinks.__main__, stack.pipeline, tapline.cli; import capture.redact, capture.topics"

# --- runtime: the venv on a fresh slim Python, run by an unprivileged user ----------------
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A home of its own: mitmproxy keeps its CA in ~/.mitmproxy, even in reverse mode.
# /var/lib/tapline is where app_b keeps its SQLite file (a named volume in compose, which
# takes this directory's owner when it is first created).
RUN useradd --create-home --uid 10001 --user-group tapline \
    && install -d -o tapline -g tapline /app /var/lib/tapline

COPY --from=builder /opt/venv /opt/venv

USER tapline
WORKDIR /app

# No default service: compose gives each its command (python -m proxy, python -m sinks lake...).
CMD ["tapline", "--help"]
