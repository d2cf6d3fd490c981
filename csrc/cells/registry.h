// The cells the kernels know, by the contract's names: one line per cell.
// FASTSEQ_CELL(name, template, variant): variant is passed to the constructor
// (the Elman cell's activation). Adding a cell: its header here and one line.
#pragma once
#include "elman.h"
#include "gru.h"
#include "lstm.h"

#define FASTSEQ_CELLS(FASTSEQ_CELL)              \
    FASTSEQ_CELL("rnn_tanh", ElmanCell, 0)       \
    FASTSEQ_CELL("rnn_relu", ElmanCell, 1)       \
    FASTSEQ_CELL("gru", GRUCell, 0)              \
    FASTSEQ_CELL("lstm", LSTMCell, 0)
