#!/usr/bin/env python3
"""Writes examples/receipts.jsonl: deterministic, receipt-like texts for `embq demo`."""
import json
import random

rng = random.Random(20261130)
merchants = {
    "grocery": ["Green Valley Market", "Corner Grocer", "FreshWay Foods", "Harvest Co-op"],
    "coffee": ["Blue Door Coffee", "Bean There Cafe", "Morning Ritual Espresso"],
    "fuel": ["Highway 9 Fuel", "QuickStop Gas", "Summit Petroleum"],
    "hardware": ["Ace Tools & Supply", "Builders Depot", "Northside Hardware"],
    "pharmacy": ["CityCare Pharmacy", "Wellness Drugs"],
    "restaurant": ["Luigi's Trattoria", "Saigon Pho House", "The Burger Joint", "Tokyo Ramen Bar"],
    "office": ["PaperTrail Office Supply", "Desk & Co."],
    "travel": ["Metro Transit", "Skyline Airways", "Harbor Hotel"],
}
items = {
    "grocery": ["bananas", "whole milk", "sourdough bread", "eggs (dozen)", "olive oil", "spinach", "cheddar cheese", "coffee beans"],
    "coffee": ["flat white", "cappuccino", "croissant", "iced latte", "blueberry muffin", "espresso"],
    "fuel": ["unleaded 95", "diesel", "car wash", "windshield fluid"],
    "hardware": ["screws 4x40", "paint roller", "wood glue", "drill bits set", "LED bulb", "extension cord"],
    "pharmacy": ["ibuprofen 200mg", "vitamin D", "bandages", "hand sanitizer", "cough syrup"],
    "restaurant": ["margherita pizza", "pho bo", "cheeseburger", "tonkotsu ramen", "house salad", "sparkling water", "tiramisu"],
    "office": ["printer paper A4", "ballpoint pens", "stapler", "sticky notes", "toner cartridge"],
    "travel": ["monthly pass", "economy ticket", "checked bag fee", "one night stay", "city tax"],
}
payments = ["VISA ****4821", "MASTERCARD ****1177", "cash", "AMEX ****3005", "debit card"]

with open("examples/receipts.jsonl", "w") as out:
    for i in range(1, 301):
        cat = rng.choice(sorted(merchants))
        merchant = rng.choice(merchants[cat])
        lines = []
        total = 0.0
        for _ in range(rng.randint(1, 5)):
            item = rng.choice(items[cat])
            qty = rng.randint(1, 3)
            price = round(rng.uniform(1.5, 60.0 if cat in ("hardware", "travel") else 18.0), 2)
            total += qty * price
            lines.append(f"{qty} x {item} @ {price:.2f}")
        tax = round(total * 0.08, 2)
        day = rng.randint(1, 28)
        month = rng.randint(1, 12)
        text = (f"{merchant} — receipt #{10000 + i}\n2026-{month:02d}-{day:02d}\n" + "\n".join(lines)
                + f"\nsubtotal {total:.2f}\ntax {tax:.2f}\ntotal {total + tax:.2f}\npaid by {rng.choice(payments)}")
        out.write(json.dumps({"source_type": "receipt", "source_id": str(i), "content_type": "full_text",
                              "text": text, "priority": 1 if cat == "travel" else 0,
                              "metadata": {"category": cat}}, ensure_ascii=False) + "\n")
