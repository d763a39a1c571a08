"""Image quality: the classifier's accuracy and Fréchet distance that verify, precision and the demo score with."""
