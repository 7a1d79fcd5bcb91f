import random

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from curation.tokens import TokenCounter, count_tokens_plain, splits_at_whitespace
from training.tokenizer import TokenizerConfig, train_tokenizer

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2024, isn't it?",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "def f(x):\n    return x[1] + 42  # comment\n\n\tTabs\r\nand CRLF",
    "emoji 🎉🎉 and 中文字符 mixed with العربية and  double  spaces   ",
] * 20

TRICKY = [
    "",
    " ",
    "   ",
    "\n\n",
    "a",
    " leading space",
    "trailing space ",
    "two  spaces\n\n\nnewlines \t\t tabs",
    "punct!!! ,,, ... 's 't 're",
    "x\u00a0nbsp\u2003em-space\u3000ideographic",
    "<|endoftext|> special <|im_start|>user\nhi<|im_end|>",
    "🎉" * 50,
    "a" * 5000,
]


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = list("abcXYZ019 .,'!?\n\t-_()🎉中é") + ["  ", "\r\n", "'s", " 't", "\u00a0"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(n)]


def test_unit_counts_equal_encode_batch_on_the_project_tokenizer():
    tokenizer = train_tokenizer(CORPUS, TokenizerConfig(vocab_size=400))
    assert splits_at_whitespace(tokenizer)
    texts = TRICKY + CORPUS + random_texts(3000)
    counter = TokenCounter(tokenizer, chunk_texts=500)  # several chunks share one cache
    assert counter(texts) == count_tokens_plain(tokenizer, texts)
    assert counter(texts[:10]) == count_tokens_plain(tokenizer, texts[:10])  # warm cache


def test_other_tokenizers_take_the_plain_path():
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        CORPUS, trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[UNK]"])
    )
    assert not splits_at_whitespace(tokenizer)
    texts = TRICKY + random_texts(200)
    assert TokenCounter(tokenizer)(texts) == count_tokens_plain(tokenizer, texts)
    assert TokenCounter(tokenizer)(["", "fox"])[0] == 0
