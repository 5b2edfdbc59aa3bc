"""`icm evaluate`: encode each image once, decode once, run every task on the same decoded pixels."""
