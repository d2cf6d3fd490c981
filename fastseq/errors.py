"""fastseq's error types: one hierarchy, so a caller (and the ``fastseq`` command) catches them alike.

    FastseqError (a ValueError)          every error fastseq raises on bad input, a bad file or a failed run
    +-- ArgumentError                    an argument of a fastseq function is out of its contract
    +-- DatasetError                     fastseq.datasets: a corpus cannot be had (offline, checksum, ...)
    +-- CheckpointError                  fastseq.checkpoint: a checkpoint cannot be written or read
    +-- ArpaError                        fastseq.ngram: an ARPA (or binary) model file cannot be read
    +-- BadDiscountError                 fastseq.ngram: a Kneser-Ney discount out of range (lmplz's rule)
    +-- NotFittedError                   fastseq.ngram: a model used before fit
    +-- NltkZeroDivisionError            fastseq.ngram.nltk: a division by zero where nltk.lm divides by zero
                                         (also a ZeroDivisionError, as nltk's)
    +-- DivergenceError                  training produced NaN or inf (also a FloatingPointError)
    +-- UsageError, TrainingError        the fastseq command's own (fastseq.cli)

FastseqError derives from ValueError so code written for the ValueErrors fastseq used to raise
still catches them. Anything that is not a FastseqError is a bug in fastseq (or in the caller's own
code) and keeps its traceback: the command maps only this hierarchy to one-line errors.
"""

__all__ = ["FastseqError", "ArgumentError"]


class FastseqError(ValueError):
    """Base of every error fastseq raises on purpose; the message names the argument or file."""


class ArgumentError(FastseqError):
    """An argument outside its contract; the message starts with the argument's name."""
