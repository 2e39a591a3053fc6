"""Worker processes: a supervisor, a hub and N workers (``[process] workers``)."""
