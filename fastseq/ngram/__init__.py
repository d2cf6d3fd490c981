"""N-gram language models: counting (Cython), Laplace and modified Kneser-Ney, ARPA, statistics.

    from fastseq.ngram import KneserNeyLM, load_arpa
    lm = KneserNeyLM(3).fit([["the", "time", "machine"], ["by", "h", "g", "wells"]])
    lm.score("the time machine")          # log10, kenlm's Model.score contract
    lm.perplexity(test_sentences)         # (including_oov, excluding_oov, tokens, oov) as KenLM's query
    lm.to_arpa("lm.arpa"); load_arpa("lm.arpa").score("the time machine")
    write_binary(lm, "lm.bin"); Model("lm.bin").score("the time machine")   # kenlm's query API

Files (ARPA, the binary model, header comments, escaped tokens): docs/NGRAM-FILES.md.

Counting: ``count_ngrams(ids, order, lengths=..., bos=..., eos=...)`` (Cython, GIL released)
and ``count_ngrams_reference`` (NumPy) give identical NGramCounts; see fastseq.ngram.counting
for sentence boundaries and merging counts of pieces. Statistics: fastseq.ngram.stats.
"""
from .counting import NGramCounts, count_in_pieces, count_ngrams, count_ngrams_reference
from .arpa import ArpaError, load_arpa
from .binary import load_binary, write_binary
from .query import Model, State
from .models import BadDiscountError, KneserNeyLM, LaplaceLM, NGramLM, Perplexity
from .stats import ZipfFit, frequencies, loglog_data, plot_zipf, stop_words, zipf_lsq, zipf_mle

__all__ = ["ArpaError", "BadDiscountError", "KneserNeyLM", "LaplaceLM", "Model", "NGramCounts", "NGramLM", "Perplexity",
           "State", "count_in_pieces", "count_ngrams", "count_ngrams_reference", "load_arpa", "load_binary", "write_binary",
           "ZipfFit", "frequencies", "loglog_data", "plot_zipf", "stop_words", "zipf_lsq", "zipf_mle"]
