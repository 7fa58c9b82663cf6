"""Function logs: what functions print and log, tagged with the call that wrote it, shown in
the server log and kept in the SQL store for ``laf-py logs`` and the console."""
