-- MLflow's tracking store (runs, the model registry) beside the trading and Dagster databases.
CREATE DATABASE mlflow OWNER quantdag;
