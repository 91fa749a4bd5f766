"""The simulated world's fixed content: latent needs, the KB, phrasings and item titles.

Kept apart from the generative process (``simulator.py``) so a reader can see the world at a
glance. See ``docs/simulator.md`` for how these are used.
"""
from __future__ import annotations

# name -> (category, how the need shows in the logs)
#   "discrete": an order status / account / payment event makes it visible to tabular features
#   "weak":     a discrete signal exists but is shared with other, more common states
#   "text":     only searches, chat messages or item titles reveal it
#   "noise":    general questions, not tied to the user's state
NEEDS: dict[str, tuple[str, str]] = {
    "track_parcel": ("logistics", "discrete"),
    "parcel_delayed": ("logistics", "discrete"),
    "parcel_lost": ("logistics", "discrete"),
    "delivered_not_received": ("logistics", "weak"),
    "shipping_fee": ("logistics", "noise"),
    "return_item": ("returns_refunds", "text"),
    "refund_status": ("returns_refunds", "discrete"),
    "payment_failed": ("payment", "discrete"),
    "double_charged": ("payment", "text"),
    "payment_methods": ("payment", "noise"),
    "cancel_order": ("order_changes", "weak"),
    "change_address": ("order_changes", "weak"),
    "order_cancelled": ("order_changes", "discrete"),
    "unrecognised_login": ("account_security", "discrete"),
    "reset_password": ("account_security", "discrete"),
    "change_language": ("account_security", "noise"),
    "voucher_expiring": ("vouchers_promotions", "discrete"),
    "voucher_not_applied": ("vouchers_promotions", "text"),
    "how_to_use_voucher": ("vouchers_promotions", "noise"),
    "damaged_item": ("product_seller", "text"),
    "seller_unresponsive": ("product_seller", "text"),
    "product_question": ("product_seller", "noise"),
    "app_crash": ("app_issues", "discrete"),
    "notifications_issue": ("app_issues", "noise"),
}
NOISE_NEEDS = [n for n, (_, kind) in NEEDS.items() if kind == "noise"]

# (title, category, {need: graded relevance 1..3}, created_days_before_end or None, active)
# created_days_before_end: cold-start intents appear this many days before the last simulated day.
KB: list[tuple[str, str, dict[str, int], int | None, bool]] = [
    # logistics
    ("Where is my parcel?", "logistics", {"track_parcel": 3, "parcel_delayed": 2, "delivered_not_received": 1}, None, True),
    ("Why is my order delayed?", "logistics", {"parcel_delayed": 3, "track_parcel": 1}, None, True),
    ("My parcel is marked lost. What happens now?", "logistics", {"parcel_lost": 3, "parcel_delayed": 1}, None, True),
    ("It says delivered but I have not received it", "logistics", {"delivered_not_received": 3, "parcel_lost": 1}, None, True),
    ("How much is the shipping fee?", "logistics", {"shipping_fee": 3}, None, True),
    ("When will my order be shipped?", "logistics", {"track_parcel": 2, "cancel_order": 1, "change_address": 1}, None, True),
    ("Can I change the delivery time slot?", "logistics", {"change_address": 2, "parcel_delayed": 1}, None, True),
    ("How do I contact the courier?", "logistics", {"parcel_delayed": 2, "track_parcel": 1, "delivered_not_received": 2}, None, True),
    # returns & refunds
    ("How do I return an item?", "returns_refunds", {"return_item": 3, "damaged_item": 2}, None, True),
    ("When will I get my refund?", "returns_refunds", {"refund_status": 3, "parcel_lost": 1}, None, True),
    ("My refund is taking too long", "returns_refunds", {"refund_status": 2}, None, True),
    ("What is the return policy?", "returns_refunds", {"return_item": 2, "damaged_item": 1}, None, True),
    ("I received the wrong item", "returns_refunds", {"return_item": 3, "damaged_item": 1}, None, True),
    ("How do I print the return label?", "returns_refunds", {"return_item": 2}, None, True),
    ("Can my refund go to a different payment method?", "returns_refunds", {"refund_status": 1, "double_charged": 1}, None, True),
    ("Can I exchange for another size?", "returns_refunds", {"return_item": 2, "product_question": 1}, None, True),
    # payment
    ("My payment failed", "payment", {"payment_failed": 3}, None, True),
    ("I was charged twice for one order", "payment", {"double_charged": 3, "payment_failed": 1}, None, True),
    ("Which payment methods can I use?", "payment", {"payment_methods": 3, "payment_failed": 1}, None, True),
    ("How do I pay with cash on delivery?", "payment", {"payment_methods": 2}, None, True),
    ("My card was declined", "payment", {"payment_failed": 2}, None, True),
    ("Money was deducted but the order was not placed", "payment", {"payment_failed": 2, "double_charged": 2}, None, True),
    ("How do instalment plans work?", "payment", {"payment_methods": 2}, None, True),
    ("How do I update my saved card?", "payment", {"payment_methods": 1, "payment_failed": 1}, None, True),
    # order changes
    ("How do I cancel my order?", "order_changes", {"cancel_order": 3}, None, True),
    ("How do I change my delivery address?", "order_changes", {"change_address": 3}, None, True),
    ("Why was my order cancelled?", "order_changes", {"order_cancelled": 3}, None, True),
    ("Can I add items to an existing order?", "order_changes", {"cancel_order": 1}, None, True),
    ("The seller cancelled my order", "order_changes", {"order_cancelled": 2, "refund_status": 1}, None, True),
    ("How do I change the phone number on my order?", "order_changes", {"change_address": 2}, None, True),
    ("My cancellation request is still pending", "order_changes", {"cancel_order": 2, "order_cancelled": 1}, None, True),
    ("Can I change the item colour after paying?", "order_changes", {"cancel_order": 1, "change_address": 1}, None, True),
    # account & security
    ("I see a login from a device I do not know", "account_security", {"unrecognised_login": 3}, None, True),
    ("How do I reset my password?", "account_security", {"reset_password": 3}, None, True),
    ("My account is locked", "account_security", {"reset_password": 2, "unrecognised_login": 1}, None, True),
    ("How do I turn on two-factor authentication?", "account_security", {"unrecognised_login": 2}, None, True),
    ("How do I change the app language?", "account_security", {"change_language": 3}, None, True),
    ("How do I delete my account?", "account_security", {}, None, True),
    ("I did not receive the OTP code", "account_security", {"reset_password": 2}, None, True),
    ("How do I update my email address?", "account_security", {"change_language": 1}, None, True),
    # vouchers & promotions
    ("My voucher is about to expire", "vouchers_promotions", {"voucher_expiring": 3}, None, True),
    ("Why can't I apply my voucher?", "vouchers_promotions", {"voucher_not_applied": 3, "how_to_use_voucher": 1}, None, True),
    ("How do I use a voucher?", "vouchers_promotions", {"how_to_use_voucher": 3, "voucher_not_applied": 2}, None, True),
    ("Where can I find free shipping vouchers?", "vouchers_promotions", {"how_to_use_voucher": 2, "shipping_fee": 2}, None, True),
    ("Can I extend my voucher's validity?", "vouchers_promotions", {"voucher_expiring": 2}, None, True),
    ("I did not receive my cashback", "vouchers_promotions", {"voucher_not_applied": 1}, None, True),
    ("How do shop coins work?", "vouchers_promotions", {"how_to_use_voucher": 1}, None, True),
    ("What are the flash sale rules?", "vouchers_promotions", {}, None, False),
    # product & seller
    ("My item arrived damaged", "product_seller", {"damaged_item": 3, "return_item": 1}, None, True),
    ("The seller is not replying", "product_seller", {"seller_unresponsive": 3}, None, True),
    ("How do I ask the seller a question?", "product_seller", {"product_question": 3, "seller_unresponsive": 1}, None, True),
    ("Is this product authentic?", "product_seller", {"product_question": 2}, None, True),
    ("How do I report a seller?", "product_seller", {"seller_unresponsive": 2, "damaged_item": 1}, None, True),
    ("The item is not as described", "product_seller", {"damaged_item": 2, "return_item": 2}, None, True),
    ("How do I check the warranty?", "product_seller", {"product_question": 2, "damaged_item": 1}, None, True),
    ("How do I rate a product?", "product_seller", {}, None, True),
    # app issues
    ("The app keeps crashing", "app_issues", {"app_crash": 3}, None, True),
    ("The app is slow or will not load", "app_issues", {"app_crash": 2}, None, True),
    ("I am not getting notifications", "app_issues", {"notifications_issue": 3}, None, True),
    ("How do I update the app?", "app_issues", {"app_crash": 1, "notifications_issue": 1}, None, True),
    ("Images are not loading", "app_issues", {"app_crash": 1}, None, True),
    ("How do I clear the app cache?", "app_issues", {"app_crash": 2}, None, True),
    ("How do I turn off promotional messages?", "app_issues", {"notifications_issue": 2}, None, True),
    ("Chat is not sending my messages", "app_issues", {"seller_unresponsive": 1, "app_crash": 1}, None, True),
    # cold-start: created inside the last week
    ("Track your parcel live on the new map", "logistics", {"track_parcel": 3, "parcel_delayed": 1}, 5, True),
    ("Claim form: delivered but not received", "logistics", {"delivered_not_received": 3, "parcel_lost": 1}, 4, True),
    ("Voucher not working on the new checkout", "vouchers_promotions", {"voucher_not_applied": 3}, 3, True),
    ("Instant refund to wallet for lost parcels", "returns_refunds", {"parcel_lost": 2, "refund_status": 2}, 2, True),
]

ANSWER_TEMPLATE = "To resolve '{title}', open Me > Help Centre > {cat} and follow the steps; agents reply within 24 hours."

# Phrasings the user might type before opening the chatbot (search box or a chat to a seller).
# "{item}" is filled with the title of an item the user ordered.
PHRASES: dict[str, list[str]] = {
    "track_parcel": ["where is my parcel", "track order {item}", "when will {item} arrive", "tracking number not updating", "parcel location", "order status shipping"],
    "parcel_delayed": ["parcel delayed", "{item} still not arrived", "delivery is late", "order stuck in transit for days", "why is shipping so slow", "package delayed again"],
    "parcel_lost": ["parcel lost", "courier lost my package", "{item} lost in delivery", "lost parcel compensation", "tracking says lost"],
    "delivered_not_received": ["says delivered but not received", "package marked delivered but nowhere", "did not get {item} but status delivered", "delivered to wrong address"],
    "shipping_fee": ["shipping fee", "why is delivery so expensive", "free shipping minimum", "shipping cost to my area"],
    "return_item": ["how to return {item}", "wrong item received", "return {item} wrong size", "got the wrong colour", "return and refund request"],
    "refund_status": ["refund status", "refund not received yet", "when refund {item}", "still waiting for my refund", "refund pending for days"],
    "payment_failed": ["payment failed", "card declined at checkout", "cannot pay for {item}", "payment error try again", "transaction failed"],
    "double_charged": ["charged twice", "double payment for {item}", "money deducted two times", "duplicate charge on card"],
    "payment_methods": ["payment options", "can i pay cash on delivery", "pay by instalment", "add new card"],
    "cancel_order": ["cancel order", "how to cancel {item}", "ordered by mistake", "cancel before shipping", "don't want {item} anymore"],
    "change_address": ["change delivery address", "wrong address on order", "update address for {item}", "moved house change shipping address"],
    "order_cancelled": ["why was my order cancelled", "seller cancelled {item}", "order cancelled automatically", "order cancelled without reason"],
    "unrecognised_login": ["someone logged into my account", "login from unknown device", "suspicious login alert", "account hacked"],
    "reset_password": ["reset password", "forgot password", "cannot log in password", "password reset link not working"],
    "change_language": ["change language", "app language setting", "switch app to english"],
    "voucher_expiring": ["voucher expiring soon", "use voucher before expiry", "extend voucher", "voucher expires tomorrow"],
    "voucher_not_applied": ["voucher not working", "cannot apply voucher at checkout", "voucher code invalid for {item}", "promo code not applied"],
    "how_to_use_voucher": ["how to use voucher", "where are my vouchers", "voucher terms", "collect vouchers"],
    "damaged_item": ["{item} arrived broken", "item damaged in delivery", "cracked on arrival", "{item} is defective", "box crushed item broken"],
    "seller_unresponsive": ["seller not replying", "seller ignores my messages about {item}", "no response from shop", "contact seller no answer"],
    "product_question": ["is {item} original", "{item} size guide", "{item} specifications", "does {item} have warranty"],
    "app_crash": ["app crashing", "app keeps closing", "app crash on checkout", "app not opening"],
    "notifications_issue": ["no notifications", "turn off promo notifications", "not getting order updates"],
}
CHAT_PREFIXES = ["", "hi, ", "hello seller, ", "please help: ", "urgent: ", "hi there "]
CHAT_SUFFIXES = ["", "?", " please", "!!", " asap", " thanks"]

ADJECTIVES = ["Wireless", "Slim", "Classic", "Ultra", "Mini", "Pro", "Organic", "Smart", "Cotton", "Waterproof",
              "Foldable", "Vintage", "Portable", "Premium", "Kids"]
PRODUCTS = ["Earbuds", "Phone Case", "Running Shoes", "Rice Cooker", "Face Serum", "Backpack", "Desk Lamp",
            "Smart Watch", "T-Shirt", "Power Bank", "Yoga Mat", "Blender", "Sunglasses", "Laptop Stand",
            "Bedsheet Set", "Water Bottle", "Hair Dryer", "Keyboard", "Sneakers", "Dress", "Air Fryer",
            "Phone Charger", "Lipstick", "Storage Box", "Baby Wipes"]
ITEM_TITLES = [f"{a} {p}" for a in ADJECTIVES for p in PRODUCTS]
PRODUCT_SEARCHES = ["{p}", "cheap {p}", "{p} sale", "best {p}", "{p} free shipping", "{p} review"]

CRASH_SCREENS = ["checkout", "home", "product page", "chat", "order list"]
PAYMENT_METHODS = ["credit card", "debit card", "e-wallet", "bank transfer"]
VOUCHER_NAMES = ["free shipping voucher", "10% off voucher", "cashback voucher", "shop voucher"]

# region -> (weight, local language, payment failure multiplier)
REGIONS = {
    "SG": (0.10, "en", 0.6), "MY": (0.14, "ms", 1.0), "TH": (0.14, "th", 1.0), "ID": (0.20, "id", 1.8),
    "VN": (0.14, "vi", 1.3), "PH": (0.14, "en", 1.5), "TW": (0.08, "zh", 0.7), "BR": (0.06, "pt", 1.2),
}

# Where a user opens the chatbot from, by the need's category.
ENTRY_BY_CATEGORY = {
    "logistics": {"order_page": 0.55, "home_icon": 0.25, "push_notification": 0.1, "help_center": 0.1},
    "returns_refunds": {"order_page": 0.5, "help_center": 0.3, "home_icon": 0.2},
    "payment": {"payment_page": 0.55, "home_icon": 0.25, "help_center": 0.2},
    "order_changes": {"order_page": 0.6, "home_icon": 0.25, "help_center": 0.15},
    "account_security": {"home_icon": 0.5, "help_center": 0.35, "push_notification": 0.15},
    "vouchers_promotions": {"home_icon": 0.45, "push_notification": 0.3, "payment_page": 0.25},
    "product_seller": {"product_page": 0.5, "order_page": 0.25, "home_icon": 0.25},
    "app_issues": {"home_icon": 0.6, "help_center": 0.4},
}

# Share of activity by hour of day (UTC is local here; the simulator ignores time zones).
HOURLY = [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1, 2, 3, 3.5, 4, 4, 4.5, 4.5, 4, 4, 4, 4.5, 5, 5.5, 5.5, 5, 3.5, 2]
