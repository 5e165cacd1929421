FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md beat_schedule.py ./
COPY api ./api
COPY domain ./domain
COPY tasks ./tasks
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir . && useradd --system billing
USER billing
EXPOSE 8000 5555 9808
CMD ["billing", "api"]
