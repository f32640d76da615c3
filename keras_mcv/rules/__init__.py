"""Pure decision rules in plain Python and NumPy (no TensorFlow), tested exactly.

- `thesis`: the thesis's rules (candidate lists, votes, discard, Methods 1-3,
  stopping), chapter 3.
- `search_options`: the beyond-the-thesis options of `SearchModel`.
- `race`: the learning-rate race's rounds, judging and survivors.
"""
