#!/usr/bin/env bash
# Downloads, into .whl/ (git ignores it), the wheels the GPU machine lacks to
# run bench/gpu_inference.sh: its image has Python 3.12, torch, numpy and
# scipy, nothing of ours, and no network. The list is the closure of the
# project's dependencies less what that image holds (device tool, KINDS.md),
# pinned to the versions the CPU tests run with (pylibjpeg-libjpeg: the
# newest with a cp312 wheel). About 30 MB, within what a device call carries.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 argon2-cffi==25.1.0 argon2-cffi-bindings==26.2.0  \
  billiard==4.3.2 celery==5.7.0 cffi==2.1.1 cryptography==50.0.2 pycparser==3.12 pyjwt==2.15.1 rfc8785==0.1.4  \
  click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 fastapi==0.165.0 fhir-core==1.1.12  \
  fhir-resources==8.3.0 highdicom==0.28.2 kombu==5.7.0 mako==1.4.3 monai==1.6.1 nibabel==5.4.2  \
  opentelemetry-api==1.45.2 orjson==3.13.0 prompt-toolkit==3.0.53 psycopg2-binary==2.9.13  \
  pydantic==2.14.4 pydantic-core==2.50.5 pydantic-settings==2.16.3 pydicom==3.0.2 pyjpegls==1.5.1  \
  pylibjpeg==2.1.0 pylibjpeg-libjpeg==2.4.0 pylibjpeg-openjpeg==2.6.0 python-dotenv==1.2.4  \
  redis==8.1.0 sqlalchemy==2.1.9 starlette==1.10.0 typing-inspection==0.4.5 tzlocal==5.4.5  \
  uvicorn==0.54.0 vine==5.1.0 wcwidth==0.9.4
