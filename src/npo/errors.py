"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class NpoError(Exception):
    """Bad input or configuration; the message names what is wrong and where."""


class DataError(NpoError):
    """Invalid QA data: names the file, the row (1-based) and the field."""

    def __init__(self, source: str, message: str, row: int | None = None, field: str | None = None):
        where = source
        if row is not None:
            where += f", row {row}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.source, self.row, self.field = source, row, field


class ConfigError(NpoError):
    """Invalid configuration: names the key and, where known, the file."""
