"""The methods as Table 1 names and orders them: the one place to add a method's label.

A method is named by its ``model=`` config (``conf/model/<name>.yaml``); one this file does not know
keeps that name as its label and comes after the known ones, so a new method shows up without an edit
here.
"""

from __future__ import annotations

# The paper's Table 1 (Yan, Wang, Liao, BMVC 2016): mean over k = 1..10 of NDCG@k and P@k. The paper
# has one Naive-RNN, a captioning model; both of our variants are set beside its numbers.
_PAPER_NAIVE = {"pascal07": (0.6367, 0.4056), "labelme": (0.4204, 0.5048)}
PAPER = {
    "pascal07": {"svm": (0.6698, 0.4631), "svm_rank": (0.6731, 0.4471), "naive_rnn": _PAPER_NAIVE["pascal07"],
                 "naive_rnn_captioning": _PAPER_NAIVE["pascal07"], "lstm": (0.7061, 0.5081)},
    "labelme": {"svm": (0.4650, 0.5277), "svm_rank": (0.4715, 0.5172), "naive_rnn": _PAPER_NAIVE["labelme"],
                "naive_rnn_captioning": _PAPER_NAIVE["labelme"], "lstm": (0.4804, 0.5463)},
}
LABELS = {"frequency": "Frequency prior", "svm": "SVM", "svm_rank": "SVM-rank",
          "naive_rnn_captioning": "Naive-RNN (captioning)", "naive_rnn": "Naive-RNN + masking",
          "lstm": "Ours (LSTM)", "lstm_tuned": "Ours (LSTM), tuned", "scorer": "Listwise scorer (new)",
          "scorer_tuned": "Listwise scorer, tuned", "scorer_lambdaloss": "Listwise scorer, LambdaLoss",
          "lstm_attention": "Ours (LSTM) + attention over the map", "label_query": "Label-query decoder"}
ORDER = list(LABELS)  # the paper's row order, the floor first; then the methods of this project
REFERENCE = "lstm"  # the method the others are compared with, image by image


def label(method: str) -> str:
    return LABELS.get(method, method)


def row_order(method: str) -> tuple[int, str]:
    """Sort key: the paper's order, then unknown methods by name."""
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)
