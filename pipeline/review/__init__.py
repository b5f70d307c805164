"""A person in the loop: the review page and Label Studio, both writing review decisions."""
