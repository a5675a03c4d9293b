-- Dagster's own storage lives in a database of its own beside the trading database.
CREATE DATABASE dagster OWNER quantdag;
