"""N-gram language models: counting (Cython), Laplace and modified Kneser-Ney, ARPA, statistics."""
from .counting import NGramCounts, count_in_pieces, count_ngrams, count_ngrams_reference
from .models import BadDiscountError, KneserNeyLM, LaplaceLM, NGramLM, Perplexity

__all__ = ["BadDiscountError", "KneserNeyLM", "LaplaceLM", "NGramCounts", "NGramLM", "Perplexity",
           "count_in_pieces", "count_ngrams", "count_ngrams_reference"]
