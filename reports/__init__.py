"""Reading runs back from MLflow: paired statistics, figures, tables and dashboards."""
