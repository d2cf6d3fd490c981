"""N-gram language models: counting (Cython), Laplace and modified Kneser-Ney, ARPA, statistics."""
from .counting import NGramCounts, count_in_pieces, count_ngrams, count_ngrams_reference
from .arpa import ArpaError, load_arpa
from .models import BadDiscountError, KneserNeyLM, LaplaceLM, NGramLM, Perplexity
from .stats import ZipfFit, frequencies, loglog_data, plot_zipf, stop_words, zipf_lsq, zipf_mle

__all__ = ["ArpaError", "BadDiscountError", "KneserNeyLM", "LaplaceLM", "NGramCounts", "NGramLM", "Perplexity",
           "count_in_pieces", "count_ngrams", "count_ngrams_reference", "load_arpa",
           "ZipfFit", "frequencies", "loglog_data", "plot_zipf", "stop_words", "zipf_lsq", "zipf_mle"]
