FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY dicom ./dicom
COPY fhir_mappings ./fhir_mappings
COPY inference ./inference
COPY conformance ./conformance
# The CPU build of torch: the default index's is a multi-GB CUDA build. For GPU
# workers, install torch for the host's CUDA before the project instead.
RUN pip install --no-cache-dir torch --index-url https://download.pytorch.org/whl/cpu
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["medaiflow", "serve"]
