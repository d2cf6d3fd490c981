"""N-gram language models: counting (Cython), Laplace and modified Kneser-Ney, ARPA, statistics."""
from .counting import NGramCounts, count_in_pieces, count_ngrams, count_ngrams_reference

__all__ = ["NGramCounts", "count_in_pieces", "count_ngrams", "count_ngrams_reference"]
