"""BioBench's ecology and reference tasks, one module each (see lifebench.tasks.catalog)."""
