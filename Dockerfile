# The server on the CPU (ONNX Runtime CPU): no torch, no diffusers.
#   docker build -t inpaintrt .
#   docker run -p 8000:8000 -v "$PWD/engines/sd15:/engine:ro" inpaintrt
# Any inpaint-serve flag can follow the image name, e.g. `... inpaintrt --engine /engine --workers 2`.
FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir ".[serve]"
EXPOSE 8000
ENTRYPOINT ["inpaint-serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--engine", "/engine"]
