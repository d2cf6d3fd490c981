"""A drop-in for nltk.lm: the same classes and numbers, counted by fastseq's Cython kernel.

    from fastseq.ngram.nltk import KneserNeyInterpolated          # was: from nltk.lm import ...
    from fastseq.ngram.nltk.preprocessing import padded_everygram_pipeline
    train, vocab = padded_everygram_pipeline(3, sentences)
    lm = KneserNeyInterpolated(3)
    lm.fit(train, vocab)
    lm.score("machine", ["the", "time"]), lm.perplexity(test_ngrams), lm.generate(10, random_seed=3)

Models: MLE, Lidstone(gamma, order), Laplace, WittenBellInterpolated, KneserNeyInterpolated(order,
discount=0.1), with nltk's formulas and quirks (docs/NLTK.md lists them). N-gram models are
chapter 8 of *Dive into Deep Learning*, "Language Models".
"""
from .counter import ConditionalFreqDist, FreqDist, NgramCounter
from .models import (KneserNeyInterpolated, NltkZeroDivisionError, LanguageModel, Laplace, Lidstone, MLE,
                     WittenBellInterpolated)
from .preprocessing import everygrams, flatten, ngrams, pad_both_ends, padded_everygram_pipeline
from .vocabulary import Vocabulary

__all__ = ["ConditionalFreqDist", "FreqDist", "KneserNeyInterpolated", "NltkZeroDivisionError", "LanguageModel",
           "Laplace", "Lidstone", "MLE", "NgramCounter", "Vocabulary", "WittenBellInterpolated", "everygrams",
           "flatten", "ngrams", "pad_both_ends", "padded_everygram_pipeline"]
