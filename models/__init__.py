"""Training, evaluation and pre-training of the ERNIE models (intent, sentiment, FAQ encoder).

Training code may import paddlenlp; serving code (services/) never imports this package's training modules.
"""
