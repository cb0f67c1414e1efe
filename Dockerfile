# CAM Explorer: the Streamlit app on port 8501.
#   docker build -t cam-explorer .
#   docker run --rm -p 8501:8501 cam-explorer      # then open http://localhost:8501
# Several replicas behind nginx: deploy/compose.yaml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies first, so code changes do not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt

COPY .streamlit/ .streamlit/
COPY pyproject.toml app.py app_cache.py app_box.py app_requests.py app_teach.py ./
COPY app_pages/ app_pages/
COPY explainers/ explainers/
COPY models_zoo/ models_zoo/
COPY assets/ assets/

# Run as an unprivileged user; torchvision weights (if downloaded) go to its cache.
RUN useradd --create-home app
USER app

EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request, sys; sys.exit(urllib.request.urlopen('http://localhost:8501/_stcore/health', timeout=4).status != 200)"

CMD ["streamlit", "run", "app.py", "--server.address", "0.0.0.0", "--server.port", "8501"]
