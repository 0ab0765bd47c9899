"""What the online runtime shares with the offline lifecycle, and nothing offline: settings, the
transaction schema, THE feature definitions, the drift reference, the compiled model, reason codes,
the Bento model's layout, API keys, the decision store and its migrations. ``serving`` imports
from here only; nothing here imports MLflow or Airflow."""
