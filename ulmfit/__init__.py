"ULMFiT from scratch: AWD-LSTM language models and text classifiers on the `common` training core."


def __getattr__(name):
    # The API pulls in spaCy and pandas; load it on first use so `python -m ulmfit --help` stays quick.
    if name in ('TextClassifier', 'Prediction'):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ulmfit' has no attribute {name!r}")


__all__ = ['TextClassifier', 'Prediction']
