"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class NpoError(Exception):
    """Bad input or configuration; the message names what is wrong and where."""

    def __reduce__(self):  # the message survives a trip between processes whatever __init__ takes
        return (_restore, (type(self), str(self), dict(self.__dict__)))


def _restore(cls, message: str, state: dict):
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


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


class Stopped(NpoError):
    """A run stopped on request (SIGTERM, Ctrl-C): the message says where and how to resume; the CLI
    exits with `code` (128 + the signal's number, as a shell reports a process it signalled)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code
