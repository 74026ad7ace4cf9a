"""The package's log messages, kept for a test to read (module-scoped fixtures cannot use caplog)."""
import logging
from contextlib import contextmanager


@contextmanager
def kept_logs():
    """Inside: every message of level INFO and up that the vattr_bench loggers emit, appended to the yielded
    list as its text."""
    messages: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    logger, handler = logging.getLogger("vattr_bench"), Keep(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
