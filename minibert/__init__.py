"""minibert: a pre-trained BERT encoder, an adapter and a new Transformer decoder, for translation."""
