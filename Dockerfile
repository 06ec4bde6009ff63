FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY dicom ./dicom
COPY fhir_mappings ./fhir_mappings
COPY inference ./inference
COPY conformance ./conformance
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["medaiflow", "serve"]
